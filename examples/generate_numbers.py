"""Write numbers.txt: a million random integers, one per line, the same ones at every run.

    .venv/bin/python examples/generate_numbers.py    # once, from the repository root

The numbers go to a temporary file that is then renamed, so numbers.txt is whole even when this
is stopped midway. The last line printed is the sum of the numbers.
"""

import os
import random

COUNT = 1_000_000
SEED = 2024  # the same file every time, so a checkpoint of it stays valid


def main() -> None:
    rng = random.Random(SEED)
    numbers = [rng.randint(-1_000_000, 1_000_000) for _ in range(COUNT)]
    with open("numbers.txt.tmp", "w") as file:
        file.write("\n".join(map(str, numbers)) + "\n")
        file.flush()
        os.fsync(file.fileno())  # on disk before the rename makes it numbers.txt
    os.replace("numbers.txt.tmp", "numbers.txt")
    print(f"wrote {COUNT:,} numbers to numbers.txt")
    print(sum(numbers))


if __name__ == "__main__":
    main()
