//! The proxy's own simple queries on a server, for start-up checks. Not used on the
//! client path.

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;

use super::connect::{Reader, server_error};
use super::{Server, ServerError};
use crate::protocol::build;

impl Server {
    /// Runs one simple query and returns its rows as text (`None` for NULL). The
    /// server is idle again afterwards, or an error is returned.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        build::query(&mut out, sql);
        self.stream.send(&out).await?;
        collect_rows(&mut Reader {
            stream: &mut self.stream,
            buf: BytesMut::new(),
        })
        .await
    }
}

async fn collect_rows(reader: &mut Reader<'_>) -> Result<Vec<Vec<Option<String>>>, ServerError> {
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        match reader.next().await? {
            Message::DataRow(row) => {
                use fallible_iterator::FallibleIterator;
                let buf = row.buffer();
                let values: Vec<Option<String>> = row
                    .ranges()
                    .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                    .collect()
                    .map_err(|e: std::io::Error| ServerError::Protocol(e.to_string()))?;
                rows.push(values);
            }
            Message::ErrorResponse(e) => error = Some(server_error(&e)),
            Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}
