"""What is built on the torchtl library: the ``torchtl`` command (``cli``), the C++-vs-Python
comparison reports (``compare``) and the demo's generated data (``demo_data``).

Imports run from here to the library only; the library never imports the tools.
"""
