"""Around a run: the command line (``cli``), comparisons of methods (``compare``), the report
and plots (``report``), and taking a ticket out of incop (``ticket``)."""
