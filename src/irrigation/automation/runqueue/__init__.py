"""The run queue: runs that found their pump busy, resting or its water source full wait
here, in priority order then age, and start through the same locked activation path.
`enqueue` queues them (a person's request, a rule's or schedule's wish); `dispatch` starts
what can start.

Lock order is the activation path's everywhere: water source -> pump -> run request. A
request is inserted under the source and pump locks (so two inserts for one pump see each
other), and started by `pumps.service.admit` inside the transaction that marks it started,
so a run request becomes at most one activation."""
