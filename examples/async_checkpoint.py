"""generator_checkpoint.py with coroutines: an async generator reads numbers.txt through
aiofiles, and each checkpoint is awaited, written in a thread while the event loop runs on.

    .venv/bin/python examples/async_checkpoint.py   # from the repository root

Stop it at any moment (Ctrl+C) and run it again: it goes on from the last checkpoint, which it
shares with generator_checkpoint.py and the worker. The last line printed is the sum.
"""

import asyncio
import time

from service.aio import load_checkpoint, number_stream, save_checkpoint

SAVE_EVERY = 0.5  # seconds between checkpoints


async def main() -> None:
    offset, running_sum = await load_checkpoint()  # (0, 0) without a checkpoint
    print(f"starting at byte {offset} with the sum {running_sum}")
    next_save = time.monotonic() + SAVE_EVERY
    async for offset, number in number_stream("numbers.txt", offset):
        running_sum += number
        if time.monotonic() >= next_save:
            await save_checkpoint(offset, running_sum)  # atomic: this pair, or the one before
            next_save = time.monotonic() + SAVE_EVERY
    await save_checkpoint(offset, running_sum)
    print(running_sum)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("stopped; run again to go on from the last checkpoint")
        raise SystemExit(130) from None
