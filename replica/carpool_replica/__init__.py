"""One model of a replica, shared by the worker and the simulator: the scheduling rules
(`scheduler`), the limits document they obey (`limits`), the measured step times (`profile`),
what a step costs (`steptime`) and the latency buckets every histogram uses (`buckets`).

Pure: no torch, no clock reads, no I/O; it imports none of carpool's other packages.
"""
