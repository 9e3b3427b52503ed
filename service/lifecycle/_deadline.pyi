"""Types of the native shutdown deadline (service/lifecycle/_deadline.c)."""

NOW: str

def watch(
    wakeup_fd: int,
    seconds: float,
    triggers: bytes,
    output_fd: int,
    last_lines: bytes,
    exit_code: int,
) -> None: ...
