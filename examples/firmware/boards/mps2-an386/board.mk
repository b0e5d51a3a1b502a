# ARM MPS2+ with the AN386 FPGA image: a Cortex-M4 with FPU. QEMU emulates it, so `make test`
# boots the image there (qemu-system-arm -M mps2-an386).
ARCH := arm
BOARD_CPU := cortex-m4
CPU_FLAGS := -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16
QEMU_MACHINE := mps2-an386
