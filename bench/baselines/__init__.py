"""What geobus is measured against: a bare drain endpoint and the reference pattern."""
