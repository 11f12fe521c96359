"""The result of one executed operation."""
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:
    from .group import ProcessGroup
    from .process import Process


@dataclass
class ExecutionResult:
    """Metadata values are strings (the contract of the Rust original);
    typed views are offered as properties."""

    operation_id: str
    operation_type: str
    metadata: Dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0
    duration: float = 0.0  # seconds spent in execute()
    process: Optional["Process"] = None
    group: Optional["ProcessGroup"] = None

    def get_metadata(self, key: str) -> Optional[str]:
        return self.metadata.get(key)

    def _int(self, key: str) -> Optional[int]:
        v = self.metadata.get(key)
        return int(v) if v is not None else None

    @property
    def pid(self) -> Optional[int]:
        return self._int("pid")

    @property
    def pgid(self) -> Optional[int]:
        return self._int("pgid")

    @property
    def is_group_leader(self) -> bool:
        return self.metadata.get("is_group_leader") == "true"

    @property
    def processes_affected(self) -> Optional[int]:
        return self._int("processes_affected")
