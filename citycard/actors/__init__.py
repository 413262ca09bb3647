"""Ray actors: thin shells around domain objects. All ray.* calls live here and in cli/."""
