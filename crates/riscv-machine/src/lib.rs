//! riscv-machine: see ../../README.md and ../shared/DESIGN.md.
