"""Sum numbers.txt, saving a checkpoint now and then: stop it at any moment (Ctrl+C), run it
again, and it goes on from the last checkpoint. `rm checkpoint.json` starts over.

    .venv/bin/python examples/generate_numbers.py       # once
    .venv/bin/python examples/generator_checkpoint.py   # from the repository root

The last line printed is the sum of numbers.txt.
"""

import time

from service import load_checkpoint, number_stream, save_checkpoint

SAVE_EVERY = 0.5  # seconds between checkpoints


def main() -> None:
    offset, running_sum = load_checkpoint()  # (0, 0) without a checkpoint
    print(f"starting at byte {offset} with the sum {running_sum}")
    next_save = time.monotonic() + SAVE_EVERY
    for offset, number in number_stream("numbers.txt", offset):
        running_sum += number
        if time.monotonic() >= next_save:
            save_checkpoint(offset, running_sum)  # atomic: this pair, or the one before
            next_save = time.monotonic() + SAVE_EVERY
    save_checkpoint(offset, running_sum)
    print(running_sum)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("stopped; run again to go on from the last checkpoint")
        raise SystemExit(130) from None
