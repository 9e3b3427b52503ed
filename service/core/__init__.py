"""The pure core: the running position and its clocks, the input grammar, the parsing kernel.

Rule: nothing here does I/O, awaits, reads a clock or imports anything of `service` outside
`service.core` (a test checks it), so all of it is tested with plain synchronous tests.
"""
