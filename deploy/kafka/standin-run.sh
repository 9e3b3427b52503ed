#!/bin/sh
# The stand-in's start: format the log directory once (KRaft), then run the broker in the
# foreground as PID 1, so `docker stop` is a graceful broker shutdown.
set -eu
config=/mnt/shared/config/server.properties
java -cp '/opt/kafka/libs/*' -Dkafka.logs.dir=/tmp kafka.tools.StorageTool format \
    --ignore-formatted --cluster-id="${CLUSTER_ID}" -c "$config"
exec java -Xmx512m -cp '/opt/kafka/libs/*' -Dkafka.logs.dir=/tmp kafka.Kafka "$config"
