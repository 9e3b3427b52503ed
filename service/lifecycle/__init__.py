"""The worker's lifecycle (start up, run, shut down) and the source/partition protocol it drives.

It sees partitions only: files and Kafka partitions are two implementations of one protocol.
"""
