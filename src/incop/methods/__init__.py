"""The methods' math, each next to its section of METHOD.md: pruners and the PQ Index
(``pruning``), the flows (``flows``), stopping rules (``stopping``), rewinding (``rewind``),
pruning at initialisation (``at_init``), flow-guided scores (``flow_guided``) and the warm-up
stop (``warmup_stop``). Nothing here runs a loop or writes a file."""
