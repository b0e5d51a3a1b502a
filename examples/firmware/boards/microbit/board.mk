# BBC micro:bit v1: a Nordic nRF51822, Cortex-M0 (ARMv6-M: no divide instruction, so libgcc
# supplies it). QEMU emulates it too (qemu-system-arm -M microbit).
ARCH := arm
BOARD_CPU := cortex-m0
CPU_FLAGS := -mcpu=cortex-m0 -mthumb -mfloat-abi=soft
QEMU_MACHINE := microbit
