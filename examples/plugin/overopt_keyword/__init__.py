"""An example overopt plugin (see the README of overopt, "Your own testbed" and "Your own method")."""
