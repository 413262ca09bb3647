"""The load lab: city model, terminal client, load driver (grows into ``citycard loadtest``)."""
