/* The application logic: a status LED that toggles every BLINK_PERIOD_TICKS ticks of a 1 kHz tick.
 * Pure C with no hardware access, so the same code runs on every board and on the host. */
#ifndef BLINK_H
#define BLINK_H

#include <stdint.h>

#define BLINK_PERIOD_TICKS 500u

typedef enum { LED_OFF = 0, LED_ON = 1 } led_state_t;

/* The LED's state after `tick`, given its state before. */
led_state_t led_next(led_state_t state, uint32_t tick);

/* How many times the LED toggles in the first `ticks` ticks. */
uint32_t firmware_toggles(uint32_t ticks);

#endif
