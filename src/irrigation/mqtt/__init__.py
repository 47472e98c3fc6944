"""The MQTT foundation that the readings bridge and the device driver share, knowing no
domain: the broker's address (`address`), clients with a persistent session, MQTT 5 where
the broker has it and manual acknowledgement (`client`), the topic scheme (`topics`), and
the embedded broker that `irrigation up` starts when none answers (`broker`)."""
