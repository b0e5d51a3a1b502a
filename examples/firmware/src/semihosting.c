/* The console on a board: ARM semihosting. `bkpt 0xAB` traps to the debugger (QEMU with
 * `-semihosting`, or OpenOCD/pyOCD with a probe), which carries out the request. Without a
 * debugger attached the trap is a HardFault, so release images would use a UART instead. */
#include "console.h"

#define SYS_WRITE0 0x04u        /* write a NUL-terminated string */
#define SYS_EXIT 0x18u          /* stop: a reason code only */
#define SYS_EXIT_EXTENDED 0x20u /* stop: reason code and exit status (semihosting v2) */
#define ADP_Stopped_ApplicationExit 0x20026u
#define ADP_Stopped_RunTimeErrorUnknown 0x20023u

static uint32_t semihost(uint32_t op, const void *arg) {
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void console_write(const char *text) {
    semihost(SYS_WRITE0, text);
}

void platform_exit(int status) {
    const uint32_t block[2] = {ADP_Stopped_ApplicationExit, (uint32_t)status};
    semihost(SYS_EXIT_EXTENDED, block);
    /* A debugger without SYS_EXIT_EXTENDED: success or failure, without the number. */
    semihost(SYS_EXIT, (const void *)(status == 0 ? ADP_Stopped_ApplicationExit : ADP_Stopped_RunTimeErrorUnknown));
    for (;;) {
    }
}
