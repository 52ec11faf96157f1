import platform
import sys

print(f"hello from python {platform.python_version()} on {sys.platform}")
