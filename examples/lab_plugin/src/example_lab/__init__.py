"""An example lab's plug-ins for Athanor: an arc melter and the route that plans its alloy buttons."""
