#include "selftest.h"

#include "blink.h"
#include "console.h"

struct check {
    uint32_t ticks;
    uint32_t toggles;
};

static const struct check checks[] = {
    {0u, 0u},
    {499u, 0u},
    {500u, 1u},
    {5000u, 10u},
#ifdef BREAK_SELFTEST
    /* Built with BREAK_SELFTEST=1: a wrong expectation, to show what a failing test looks like. */
    {10000u, 21u},
#else
    {10000u, 20u},
#endif
};

int selftest_run(void) {
    const unsigned count = sizeof checks / sizeof checks[0];
    int failed = 0;
    for (unsigned i = 0; i < count; i++) {
        uint32_t got = firmware_toggles(checks[i].ticks);
        if (got != checks[i].toggles) {
            console_write("self-test FAILED: firmware_toggles(");
            console_write_u32(checks[i].ticks);
            console_write(") = ");
            console_write_u32(got);
            console_write(", expected ");
            console_write_u32(checks[i].toggles);
            console_write("\n");
            failed++;
        }
    }
    console_write("self-test: ");
    console_write_u32(count);
    console_write(" checks, ");
    console_write_u32((uint32_t)failed);
    console_write(failed == 0 ? " failed: passed\n" : " failed: FAILED\n");
    return failed;
}
