"""The Kafka source: a topic read by a consumer group, each partition's state committed with
its offset (see `state.py` for the rules), and `publish`, which fills a topic from files."""

from __future__ import annotations

__all__: list[str] = []
