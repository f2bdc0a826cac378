"""Plain applications, one per server, each made upgradable in a few lines at its end."""
