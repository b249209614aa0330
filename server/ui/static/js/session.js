// Pages that call no API still carry the API key control in their header.
import "./auth.js";
