"""The event loop's selector (tasks.worker.aio.PreciseEpollSelector): epoll
whose wait is kept to the microsecond by a select() on its descriptor. What
it must not do is lose an event or block when something is ready, on either
path: below FD_SETSIZE, and past it, where it falls back to epoll's wait."""

import asyncio
import os
import resource
import selectors
import socket
import threading

import pytest

from tasks.worker.aio import PreciseEpollSelector

FD_SETSIZE = 1024


@pytest.fixture
def high_descriptors():
    """Descriptors below FD_SETSIZE taken, so that the next one is past it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FD_SETSIZE + 64:
        pytest.skip(f"the hard limit on open files ({hard}) is too low to go past FD_SETSIZE")
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_SETSIZE + 64, hard))
    taken = []
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        taken.append(null)
        while taken[-1] < FD_SETSIZE:
            taken.append(os.dup(null))
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_on_precise_loop(coroutine):
    """Run ``coroutine`` to its end on a loop of its own over the selector,
    in a thread of its own, as the worker does (and because the main thread
    may hold another running loop: Playwright's, in the browser tests)."""
    outcome = {}

    def serve():
        loop = asyncio.SelectorEventLoop(PreciseEpollSelector())
        try:
            outcome["result"] = loop.run_until_complete(asyncio.wait_for(coroutine, 60))
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc
        finally:
            loop.close()

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def ready_pair_events(selector):
    """A socket made readable, then selected: the event must come back, at
    once (a timeout of an hour: a lost event would hang the test)."""
    left, right = socket.socketpair()
    with left, right:
        selector.register(left, selectors.EVENT_READ, "left")
        right.send(b"x")
        events = selector.select(3600)
        selector.unregister(left)
    return [(key.data, mask) for key, mask in events]


def test_a_ready_socket_is_returned_at_once():
    with PreciseEpollSelector() as selector:
        assert selector.fileno() < FD_SETSIZE
        assert ready_pair_events(selector) == [("left", selectors.EVENT_READ)]
        assert selector._precise


def test_nothing_ready_returns_nothing_after_the_timeout():
    with PreciseEpollSelector() as selector:
        left, right = socket.socketpair()
        with left, right:
            selector.register(left, selectors.EVENT_READ)
            assert selector.select(0.01) == []
            assert selector.select(0) == []


def test_a_socket_that_becomes_ready_during_the_wait_wakes_it():
    with PreciseEpollSelector() as selector:
        left, right = socket.socketpair()
        with left, right:
            selector.register(left, selectors.EVENT_READ, "left")
            timer = threading.Timer(0.05, right.send, args=(b"x",))
            timer.start()
            try:
                events = selector.select(3600)
            finally:
                timer.join()
            assert [key.data for key, _ in events] == ["left"]


def test_past_fd_setsize_it_falls_back_to_epolls_own_wait(high_descriptors):
    with PreciseEpollSelector() as selector:
        assert selector.fileno() >= FD_SETSIZE
        assert ready_pair_events(selector) == [("left", selectors.EVENT_READ)]
        assert not selector._precise  # select() refused the descriptor once
        assert selector.select(0.01) == []


def test_an_event_loop_on_it_runs_timers_and_sockets():
    async def main():
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        left.setblocking(False)
        with left, right:
            await asyncio.sleep(0.001)
            loop.call_later(0.01, right.send, b"ping")
            return await loop.sock_recv(left, 4)

    assert run_on_precise_loop(main()) == b"ping"


def test_two_hundred_connections_at_once_each_get_their_answer():
    """Many descriptors ready at the same time, and between waits: each
    reader hears its own writer, none is lost or crossed."""

    async def echo(reader, writer):
        writer.write(await reader.readexactly(8))
        await writer.drain()
        writer.close()

    async def client(port, n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.001 * (n % 7))  # the writes spread over several waits
        writer.write(f"{n:08d}".encode())
        answer = await reader.readexactly(8)
        writer.close()
        return int(answer)

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=256)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await asyncio.gather(*(client(port, n) for n in range(200)))

    assert run_on_precise_loop(main()) == list(range(200))
