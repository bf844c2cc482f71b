"""The demo: builder.py (the demo store, offline), simulate.py (the simulated DataComp-format pool and its ground
truth), steps.py (the analyses the demo runs). Production code never imports this package."""
