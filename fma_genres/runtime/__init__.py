"""Runtime helpers: errors, atomic writes, devices and cores, allocator, locks, signals, torchrun, child processes."""
