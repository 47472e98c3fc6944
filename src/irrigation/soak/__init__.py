"""The fault soak: a seeded run of the whole stack under random requests and faults
(`runner`), what it records (`history`), and the offline checker that judges the safety
invariants from the simulator's truth alone (`checker`)."""
