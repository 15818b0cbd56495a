"""Type aliases used across the package"""

import os  # pylint: disable=unused-import  # used in the string annotation below
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]
