"""kd-sensor: sensor-modality transfer with few images of the new sensor."""
