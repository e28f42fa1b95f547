"""What users see: progress bars, tables in the terminal, PNG plots."""
