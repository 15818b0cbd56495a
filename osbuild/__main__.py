"""`python3 -m osbuild`: the osbuild command line"""

from .main_cli import main

main()
