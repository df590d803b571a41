"""How one backend is chosen among the candidates a route allows."""
