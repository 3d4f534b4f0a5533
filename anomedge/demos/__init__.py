"""Self-contained demos (workstation side: they train with torch and plot with matplotlib)."""
