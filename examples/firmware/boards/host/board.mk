# The machine the build runs on: the firmware's logic and self-test as an ordinary program.
ARCH := host
BOARD_CPU := native
