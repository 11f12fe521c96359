"""The result of one executed operation."""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Callable, Dict, Optional, Union
    from .group import ProcessGroup
    from .process import Process


class ExecutionResult:
    """What ProcessExecutor.execute() returns for one operation.

    `metadata` holds strings (the contract of the Rust original): for a
    spawn `pid`, `pgid`, `is_group_leader`, `command`, `args`, `executor`,
    `user`, `containment` (the group's tier) and `limits` when it has any; for a group
    signal `operation_type` = "process_group_signal", `target_pgid`,
    `signal`, `signal_name`, `processes_affected`. Typed views are offered
    as properties. `process` is the spawned child's Process handle (None for
    signal and kill operations), `group` its ProcessGroup when the spawn
    made a new group or session (None when the child joined or inherited
    one). `duration` is the seconds spent in execute().

    `metadata` may be given as a zero-argument function: the dict is then
    built on first access (a spawn's quoting of its arguments is not on
    run()'s path)."""

    __slots__ = ("operation_id", "operation_type", "_metadata", "started_at", "duration", "process", "group")

    def __init__(self, operation_id: str, operation_type: str,
                 metadata: "Union[Dict[str, str], Callable[[], Dict[str, str]], None]" = None,
                 started_at: float = 0.0, duration: float = 0.0, process: Optional["Process"] = None,
                 group: Optional["ProcessGroup"] = None):
        self.operation_id: str = operation_id
        self.operation_type: str = operation_type
        self._metadata = metadata if metadata is not None else {}
        self.started_at: float = started_at
        self.duration: float = duration  # seconds spent in execute()
        self.process: Optional[Process] = process
        self.group: Optional[ProcessGroup] = group

    @property
    def metadata(self) -> Dict[str, str]:
        """The metadata dict (str keys, str values), built on first access
        if it was given as a function."""
        meta = self._metadata
        if callable(meta):
            meta = self._metadata = meta()
        return meta

    def __repr__(self) -> str:
        return (f"ExecutionResult(operation_id={self.operation_id!r}, operation_type={self.operation_type!r}, "
                f"metadata={self.metadata!r}, duration={self.duration!r})")

    def get_metadata(self, key: str) -> Optional[str]:
        """The metadata value for `key` as a string, or None when this
        operation did not record it."""
        return self.metadata.get(key)

    def _int(self, key: str) -> Optional[int]:
        v = self.metadata.get(key)
        return int(v) if v is not None else None

    @property
    def pid(self) -> Optional[int]:
        """The spawned child's pid (the `pid` metadata as int); None for
        operations that spawned nothing."""
        return self._int("pid")

    @property
    def pgid(self) -> Optional[int]:
        """The process group the child is in (the `pgid` metadata as int):
        its own pid when it leads a new group, the joined or inherited
        group's id otherwise; on Windows the id of the group's Job Object.
        None for operations that spawned nothing."""
        return self._int("pgid")

    @property
    def is_group_leader(self) -> bool:
        """True when the spawned child leads its process group (it was
        spawned with a new group or session)."""
        return self.metadata.get("is_group_leader") == "true"

    @property
    def processes_affected(self) -> Optional[int]:
        """How many processes a group signal reached (the
        `processes_affected` metadata as int); None for other operations."""
        return self._int("processes_affected")
