/* A tiny firmware: a status LED state machine driven by a 1 kHz tick (blink.c), with a self-test.
 * On a board it prints a banner, runs the self-test and stops with its result; on the host
 * (`make BOARD=host`) it is an ordinary program. */
#include "blink.h"
#include "console.h"
#include "selftest.h"

#ifdef HOST_BUILD
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--self-test") == 0) {
        return selftest_run() == 0 ? 0 : 1;
    }
    printf("toggles in 10 s at 1 kHz: %u\n", (unsigned)firmware_toggles(10000));
    return 0;
}
#else
int main(void) {
    console_write("firmware " BOARD_NAME " (" BOARD_CPU "): toggles in 10 s at 1 kHz: ");
    console_write_u32(firmware_toggles(10000u));
    console_write("\n");
    platform_exit(selftest_run());
}
#endif
