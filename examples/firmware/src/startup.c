/* Cortex-M startup, no vendor HAL: the vector table the core reads at reset (initial stack
 * pointer, then the handlers), and the reset handler that sets up RAM and calls main(). The
 * symbols come from the linker script (src/cortex-m.ld). */
#include <stdint.h>

#include "console.h"

extern uint32_t _estack;             /* top of RAM: the initial stack pointer */
extern uint32_t _sidata;             /* where .data's initial values are in flash */
extern uint32_t _sdata, _edata;      /* .data in RAM */
extern uint32_t _sbss, _ebss;        /* .bss in RAM */

int main(void);
void Reset_Handler(void);
void Default_Handler(void);

/* Every handler is weak: a board or the application defines the ones it uses. */
void NMI_Handler(void) __attribute__((weak, alias("Default_Handler")));
void HardFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void MemManage_Handler(void) __attribute__((weak, alias("Default_Handler")));
void BusFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void UsageFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SVC_Handler(void) __attribute__((weak, alias("Default_Handler")));
void DebugMon_Handler(void) __attribute__((weak, alias("Default_Handler")));
void PendSV_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SysTick_Handler(void) __attribute__((weak, alias("Default_Handler")));

typedef void (*vector_t)(void);

/* The core's 16 system vectors; a board's interrupt vectors (IRQ 0, 1, ...) would follow. */
__attribute__((section(".isr_vector"), used)) const vector_t vector_table[16] = {
    (vector_t)&_estack,
    Reset_Handler,
    NMI_Handler,
    HardFault_Handler,
    MemManage_Handler, /* Cortex-M3 and up; reserved on M0 */
    BusFault_Handler,
    UsageFault_Handler,
    0,
    0,
    0,
    0,
    SVC_Handler,
    DebugMon_Handler,
    0,
    PendSV_Handler,
    SysTick_Handler,
};

void Reset_Handler(void) {
    const uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0u;
    }
#if defined(__ARM_FP)
    /* Built for the FPU (-mfloat-abi=hard): give CP10 and CP11 full access before any FP code. */
    volatile uint32_t *cpacr = (volatile uint32_t *)0xE000ED88u;
    *cpacr |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    (void)main();
    for (;;) {
    }
}

/* An exception nobody handles: say so and stop (under QEMU this ends the test with status 2). */
void Default_Handler(void) {
    console_write("fault: unexpected exception\n");
    platform_exit(2);
}
