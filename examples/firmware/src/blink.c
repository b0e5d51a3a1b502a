#include "blink.h"

led_state_t led_next(led_state_t state, uint32_t tick) {
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
