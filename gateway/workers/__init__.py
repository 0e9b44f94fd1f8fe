"""The gateway's side of the runtime worker processes: spawn, talk to, watch and restart them."""
