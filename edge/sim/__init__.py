"""The simulated world of a trailer line, kept apart from the runtime in `edge/`.

`line`  a real mosquitto on the shipped hub config and real `edge run` node processes
        (`edge demo` and the tests stand on it);
`world` what a mock-pin node's outputs do to the parts and people around it: carriers on the
        belt break the beams, a visitor opens and shuts a released locker.

Nothing in the runtime imports this package except `edge run --world` and `edge demo`.
"""
