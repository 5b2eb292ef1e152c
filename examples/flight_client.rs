//! A Rust client of `relgraph serve`, using only the Arrow Flight crate: authenticate,
//! score some entities, ask a ranking model for recommendations, append a row.
//!
//! ```text
//! relgraph serve --data DIR --model churn=M1 --model recs=M2 --store S --token T
//! cargo run --example flight_client -- 127.0.0.1:7070 T churn recs CU-1000,CU-1001
//! ```

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor, Ticket};
use futures::TryStreamExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The rows of `batches`, one line each, columns separated by tabs.
fn show(batches: &[RecordBatch]) -> Result<(), Error> {
    for b in batches {
        let names: Vec<&str> = b
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        println!("{}", names.join("\t"));
        for r in 0..b.num_rows() {
            let cells = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r))
                .collect::<Result<Vec<_>, _>>()?;
            println!("{}", cells.join("\t"));
        }
    }
    Ok(())
}

async fn get(
    client: &mut FlightClient,
    ticket: serde_json::Value,
) -> Result<Vec<RecordBatch>, Error> {
    let stream = client.do_get(Ticket::new(ticket.to_string())).await?;
    Ok(stream.try_collect().await?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, token, model, ranking, keys] = args.as_slice() else {
        return Err(
            "usage: flight_client ADDR TOKEN SCORE_MODEL RANKING_MODEL KEY[,KEY...]".into(),
        );
    };
    let keys: Vec<&str> = keys.split(',').collect();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = FlightClient::new(channel);
    // The configured token buys a session token, sent with every later call.
    let session = client.handshake(token.clone().into_bytes()).await?;
    let session = String::from_utf8(session.to_vec())?;
    client.add_header("authorization", &format!("Bearer {session}"))?;

    let scores = get(
        &mut client,
        serde_json::json!({"v": 1, "model": model, "keys": keys}),
    )
    .await?;
    show(&scores)?;
    let recs = get(
        &mut client,
        serde_json::json!({"v": 1, "op": "recommend", "model": ranking, "keys": [keys[0]], "k": 5, "exclude_seen": true}),
    )
    .await?;
    show(&recs)?;

    // Append one browsing session for the first entity: only some columns, by name.
    let schema = Arc::new(Schema::new(vec![
        Field::new("session_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("timestamp", DataType::Utf8, false),
    ]));
    let stamp = scores[0]
        .column_by_name("anchor_time")
        .map(|a| array_value_to_string(a, 0))
        .transpose()?
        .unwrap_or_default();
    let row = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![format!("S-example-{session}")])),
            Arc::new(StringArray::from(vec![keys[0]])),
            Arc::new(StringArray::from(vec!["view"])),
            Arc::new(StringArray::from(vec![stamp.replace('T', " ")])),
        ],
    )?;
    let put = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![
            "tables".into(),
            "browsing_sessions".into(),
        ])))
        .build(futures::stream::iter([Ok(row)]));
    let acks: Vec<_> = client.do_put(put).await?.try_collect().await?;
    for ack in acks {
        println!("appended: {}", String::from_utf8_lossy(&ack.app_metadata));
    }
    Ok(())
}
