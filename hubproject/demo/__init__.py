"""A small demo app: counters and chat rooms as HordeProcesses, driven from web pages."""
