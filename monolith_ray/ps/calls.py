"""How a client reaches parameter servers, and the error of a server that did not answer.

:class:`DirectCalls` runs methods of plain objects in this process when issued;
:class:`RayCalls` calls actor handles (``.method.remote``, then one ``ray.get`` bounded by a
timeout); ``ps.channel.ChannelCalls`` (direct connections) has the same two methods and
raises the same :class:`ShardUnavailableError`. ``ps.client.calls_for`` picks one for given
shards. A module of its own, so that the client and the channel both import it and not each
other.
"""

from __future__ import annotations

from typing import Any, Protocol


class Calls(Protocol):
    """How a client reaches its shards: ``submit`` issues one call, ``gather`` waits for many."""

    def submit(self, shard: Any, method: str, *args: Any) -> Any: ...

    def gather(self, handles: list[Any]) -> list[Any]: ...


class DirectCalls:
    """Calls methods of in-process objects: the call runs when submitted."""

    def submit(self, shard: Any, method: str, *args: Any) -> Any:
        return getattr(shard, method)(*args)

    def gather(self, handles: list[Any]) -> list[Any]:
        return list(handles)


class ShardUnavailableError(RuntimeError):
    """A parameter server is dead or did not answer in time; the step did not happen."""


class RayCalls:
    """Calls Ray actor handles: ``submit`` is ``shard.method.remote(...)``, ``gather`` one
    ``ray.get`` over all the object refs, bounded by ``timeout_s``. A dead actor or a timeout
    raises :class:`ShardUnavailableError` naming the call's position (the shard index for a
    client's calls) instead of hanging."""

    def __init__(self, timeout_s: float | None = 60.0) -> None:
        self.timeout_s = timeout_s

    def submit(self, shard: Any, method: str, *args: Any) -> Any:
        return getattr(shard, method).remote(*args)

    def gather(self, handles: list[Any]) -> list[Any]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            return ray.get(list(handles), timeout=self.timeout_s)
        except GetTimeoutError as err:
            ready, _ = ray.wait(list(handles), num_returns=len(handles), timeout=0)
            late = [i for i, h in enumerate(handles) if h not in ready]
            raise not_answered(late, len(handles), self.timeout_s) from err
        except RayActorError as err:
            dead = []
            for i, h in enumerate(handles):
                try:
                    ray.get(h, timeout=0)
                except RayActorError:
                    dead.append(i)
                except GetTimeoutError:
                    pass  # still running: alive
            raise dead_or_unreachable(dead, len(handles), err) from err


def not_answered(positions: list[int], n: int, timeout_s: float | None
                 ) -> ShardUnavailableError:
    """The error of calls at ``positions`` (of ``n`` waited for) not answered in time."""
    return ShardUnavailableError(
        f"parameter server(s) {positions} of {n} did not answer within {timeout_s} s")


def dead_or_unreachable(positions: list[int], n: int, err: BaseException
                        ) -> ShardUnavailableError:
    """The error of calls at ``positions`` (of ``n``) to servers dead for good."""
    return ShardUnavailableError(
        f"parameter server(s) {positions} of {n} are dead or unreachable "
        f"({type(err).__name__}); restart them from the latest snapshot")
