"""Types of the optional C extension built from _ids.c."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

def pack_ascii(
    ids: Sequence[object] | npt.NDArray[Any],
    max_len: int,
    start: npt.NDArray[np.int64],
    length: npt.NDArray[np.int64],
    /,
) -> bytearray | None:
    """The ids (a list, a tuple, or a 1-D C-contiguous array of objects, read in place) back to
    back, each one's offset and length written to start and length, or None unless every id is
    a plain str of 1 to max_len ASCII characters, with no NUL, not only whitespace."""
