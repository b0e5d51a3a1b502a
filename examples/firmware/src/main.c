/* A tiny firmware: a status LED state machine driven by a tick counter. Built for the host (with a
 * self-test) and, when a cross compiler is available, for a Cortex-M4 board. */
#include <stdint.h>

#define BLINK_PERIOD_TICKS 500u

typedef enum { LED_OFF = 0, LED_ON = 1 } led_state_t;

static led_state_t led_next(led_state_t state, uint32_t tick) {
    if (tick % BLINK_PERIOD_TICKS == 0u) {
        return state == LED_ON ? LED_OFF : LED_ON;
    }
    return state;
}

uint32_t firmware_toggles(uint32_t ticks) {
    led_state_t led = LED_OFF;
    uint32_t toggles = 0;
    for (uint32_t t = 1; t <= ticks; t++) {
        led_state_t next = led_next(led, t);
        toggles += next != led;
        led = next;
    }
    return toggles;
}

#ifdef HOST_BUILD
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--self-test") == 0) {
        int ok = firmware_toggles(0) == 0 && firmware_toggles(499) == 0 && firmware_toggles(500) == 1 &&
                 firmware_toggles(5000) == 10;
        printf("self-test: %s\n", ok ? "passed" : "FAILED");
        return ok ? 0 : 1;
    }
    printf("toggles in 10 s at 1 kHz: %u\n", (unsigned)firmware_toggles(10000));
    return 0;
}
#endif
