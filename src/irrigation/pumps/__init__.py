"""Pump activation: the locked critical section, jobs, gateway and device simulator."""
