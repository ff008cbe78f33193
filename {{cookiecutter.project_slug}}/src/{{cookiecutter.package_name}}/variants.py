"""The PyTorch wheel builds this project can switch between (standard library only).

Keys are the `cuda_version` values of env.yml and the template; values are the wheel tags that
name PyTorch's package indexes (https://download.pytorch.org/whl/<tag>).
"""

WHEEL_TAGS = {"13.0": "cu130", "12.6": "cu126", "cpu": "cpu"}
