"""The I/O shell: thin loops that move frames between ``zmq.asyncio`` sockets and the core."""
